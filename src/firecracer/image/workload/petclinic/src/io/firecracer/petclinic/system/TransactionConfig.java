package io.firecracer.petclinic.system;

import org.springframework.aop.framework.autoproxy.InfrastructureAdvisorAutoProxyCreator;
import org.springframework.beans.factory.config.BeanDefinition;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Role;
import org.springframework.stereotype.Component;
import org.springframework.transaction.PlatformTransactionManager;
import org.springframework.transaction.annotation.AnnotationTransactionAttributeSource;
import org.springframework.transaction.interceptor.BeanFactoryTransactionAttributeSourceAdvisor;
import org.springframework.transaction.interceptor.TransactionAttributeSource;
import org.springframework.transaction.interceptor.TransactionInterceptor;

/**
 * What {@code @EnableTransactionManagement} sets up, registered by hand: that annotation imports a full
 * {@code @Configuration} class, which Debian's CGLIB cannot enhance. The auto-proxy creator makes JDK
 * interface proxies (no class proxies, so no CGLIB and no {@code --add-opens} on Java 17) around beans
 * with {@code @Transactional} methods, i.e. the {@code ClinicService}.
 */
@Component
public class TransactionConfig {
    @Bean
    public static InfrastructureAdvisorAutoProxyCreator transactionAutoProxyCreator() {
        InfrastructureAdvisorAutoProxyCreator apc = new InfrastructureAdvisorAutoProxyCreator();
        apc.setProxyTargetClass(false);
        return apc;
    }

    @Bean
    @Role(BeanDefinition.ROLE_INFRASTRUCTURE)
    public static TransactionAttributeSource transactionAttributeSource() {
        return new AnnotationTransactionAttributeSource();
    }

    @Bean
    @Role(BeanDefinition.ROLE_INFRASTRUCTURE)
    public static TransactionInterceptor transactionInterceptor(TransactionAttributeSource transactionAttributeSource,
                                                                PlatformTransactionManager transactionManager) {
        return new TransactionInterceptor(transactionManager, transactionAttributeSource);
    }

    @Bean
    @Role(BeanDefinition.ROLE_INFRASTRUCTURE)
    public static BeanFactoryTransactionAttributeSourceAdvisor transactionAdvisor(
            TransactionAttributeSource transactionAttributeSource, TransactionInterceptor transactionInterceptor) {
        BeanFactoryTransactionAttributeSourceAdvisor advisor = new BeanFactoryTransactionAttributeSourceAdvisor();
        advisor.setTransactionAttributeSource(transactionAttributeSource);
        advisor.setAdvice(transactionInterceptor);
        return advisor;
    }
}
